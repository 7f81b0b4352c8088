% rebase('layout', title=title, slug=None, logged_in=logged_in)
<h1>Repositories</h1>
<ul class="repos">
% for repo in repos:
  <li><a href="/repos/{{repo}}/runs">{{repo}}</a></li>
% end
</ul>
